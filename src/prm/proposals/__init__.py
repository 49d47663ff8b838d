"""Class-agnostic segment proposals (docs/method.md §5 retrieves instance masks from them).

- :class:`SelectiveSearch`: a built-in generator (hierarchical grouping of superpixels);
- :func:`load_proposals` / :func:`save_proposals`: precomputed proposals in COCO-RLE
  JSON, the PRM authors' base64 run-length JSON, ``.npz`` and MCG's ``.mat``;
- :class:`ProposalCache` / :func:`precompute_proposals`: an on-disk cache filled in
  parallel and resumably (``prm proposals`` on the command line);
- :func:`prm_support_proposals`: a proposal-free fallback from the PRMs themselves;
- :func:`grabcut_proposals`: proposal-free candidates from GrabCut seeded by the PRMs;
- :class:`ProposalEvaluator` / :func:`best_overlaps`: ABO and recall against ground truth.

Proposals of one image are ``Tensor[P, H, W]`` bool at the image's own resolution, best
first (docs/conventions.md); :class:`CompactProposals` is the same as superpixel unions.
"""

from .cache import PrecomputeSummary, ProposalCache, list_images, precompute_proposals
from .compact import CompactProposals
from .fallback import prm_support_proposals
from .grabcut import grabcut_proposals
from .io import FORMATS, decode_base64_rle, encode_base64_rle, load_proposals, save_proposals
from .quality import ProposalEvaluator, best_overlaps
from .selective_search import SelectiveSearch

__all__ = [
    "FORMATS",
    "CompactProposals",
    "PrecomputeSummary",
    "ProposalCache",
    "ProposalEvaluator",
    "SelectiveSearch",
    "best_overlaps",
    "decode_base64_rle",
    "encode_base64_rle",
    "grabcut_proposals",
    "list_images",
    "load_proposals",
    "precompute_proposals",
    "prm_support_proposals",
    "save_proposals",
]
