"""Download, verify (sha1) and extract the authors' checkpoints, candidate_rerank_ckpts.zip (7.6 GiB).

    python data_scripts/download_checkpoints.py --url ONEDRIVE_LINK --out models
    python data_scripts/download_checkpoints.py --archive ~/Downloads/candidate_rerank_ckpts.zip
    python data_scripts/download_checkpoints.py --help

The link is in DOWNLOAD.md of github.com/Cuberick-Orion/Candidate-Reranking-CIR. If it only opens
a web page, download the zip in a browser and pass it with --archive.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install
from cirtutor.download import cli_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(cli_main(["checkpoints", *sys.argv[1:]]))
