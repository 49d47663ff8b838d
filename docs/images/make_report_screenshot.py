"""Screenshot of an HTML report in headless Chromium, for the README.

    python docs/images/make_report_screenshot.py prm-demo/report/index.html \
        --out docs/images/report.png

Needs Debian's chromium and chromium-driver and selenium (the test extra). The page is
shown at ``--width`` px, scrolled to the element ``--anchor`` (optional), cut at
``--height`` px, halved in size and stored with a 256-colour palette to stay small.
"""

import argparse
import shutil
from io import BytesIO
from pathlib import Path

from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/images/report.png"))
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1600)
    parser.add_argument("--anchor", help="id of the element to start at (e.g. gallery)")
    parser.add_argument("--scale", type=float, default=0.5)
    args = parser.parse_args()

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    try:
        driver.set_window_size(args.width, args.height)
        driver.get(args.page.resolve().as_uri())
        top = 0
        if args.anchor:
            top = driver.execute_script(
                "return document.getElementById(arguments[0]).offsetTop", args.anchor
            )
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(args.width, height + 200)
        shot = Image.open(BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    finally:
        driver.quit()
    shot = shot.crop((0, top, shot.width, min(shot.height, top + args.height)))
    size = (round(shot.width * args.scale), round(shot.height * args.scale))
    shot = shot.resize(size, Image.LANCZOS).quantize(256, dither=Image.Dither.NONE)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    shot.save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB, {size[0]}x{size[1]})")


if __name__ == "__main__":
    main()
