"""Download the CIRR annotations from GitHub and explain how to get the NLVR2 images.

    python data_scripts/download_cirr.py --root data/cirr_dataset
    python data_scripts/download_cirr.py --help

Files land in ROOT/cirr/captions/ and ROOT/cirr/image_splits/. The images come from NLVR2 and
need its request form; put them at ROOT/train/<n>/, ROOT/dev/ and ROOT/test1/.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install
from cirtutor.download import cli_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(cli_main(["cirr", *sys.argv[1:]]))
