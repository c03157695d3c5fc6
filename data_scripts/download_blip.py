"""Download BLIP's pretrained ViT-B checkpoint `model_base.pth` (about 0.9 GB).

    python data_scripts/download_blip.py --out models
    python data_scripts/download_blip.py --out models --sha256 HEX   # verify a recorded digest
    python data_scripts/download_blip.py --help

No checksum is published, so the sha256 is printed after the download for you to record.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install
from cirtutor.download import cli_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(cli_main(["blip", *sys.argv[1:]]))
