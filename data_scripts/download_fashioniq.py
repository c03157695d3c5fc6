"""Download Fashion-IQ: annotations from GitHub and product images from Amazon.

    python data_scripts/download_fashioniq.py --root data/fashionIQ_dataset
    python data_scripts/download_fashioniq.py --root DIR --categories dress --no-images
    python data_scripts/download_fashioniq.py --help

Files land in ROOT/captions/, ROOT/image_splits/, ROOT/image_url/ and ROOT/images/<ASIN>.jpg.
Many Amazon image links are dead; ROOT/images_report.json lists them. Re-run to resume.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install
from cirtutor.download import cli_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(cli_main(["fashioniq", *sys.argv[1:]]))
