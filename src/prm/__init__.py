"""prm: weakly supervised instance segmentation with Peak Response Maps.

Zhou, Zhu, Ye, Qiu, Jiao. *Weakly Supervised Instance Segmentation using Class Peak
Response*. CVPR 2018.
"""

__version__ = "0.1.0"
