"""The client side of :mod:`tools.monailabel_check`: talks to a running MONAI Label server with MONAI Label's own
client (``monailabel.client.MONAILabelClient``), so it runs in the check's MONAI Label environment, not in the
repository's (it imports nothing from the repository).

::

    python tools/monailabel_client.py --url http://127.0.0.1:8000 --model btcv_segmentation \\
        --image example_ct_sm --output /tmp/label.nii.gz [--train_epochs 2]

1. ``GET /info/``: the model is served and lists its labels;
2. ``POST /infer/<model>?image=<id>``: the label volume of a study image, written to ``--output``;
3. with ``--train_epochs N``: ``PUT /datastore/label`` submits that label volume as the image's final label (what an
   annotator does after correcting it), then ``POST /train/<model>`` trains on it for N epochs (no validation split),
   waits for the task to end and fails unless it ended with ``DONE``.

Prints one JSON object: the model's labels from ``/info/``, the inference's result parameters and, when trained, the
train task's final status.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time

from monailabel.client import MONAILabelClient

TRAIN_POLL_SECONDS = 5
TRAIN_PENDING = ("SUBMITTED", "RUNNING")  # MONAI Label's task states before DONE, ERROR or STOPPED


def served_labels(client: MONAILabelClient, model: str) -> dict:
    """The labels of ``model`` in ``/info/``; ``SystemExit`` naming the served models if it is not there."""
    models = client.info()["models"]
    if model not in models:
        sys.exit(f"model {model!r} is not served; /info/ lists {sorted(models)}")
    return models[model]["labels"]


def infer(client: MONAILabelClient, model: str, image: str, output: str) -> dict:
    """Run ``model`` on study ``image``; the label file goes to ``output``, the result parameters are returned."""
    label_file, result = client.infer(model, image, params={})
    shutil.move(label_file, output)
    return result if isinstance(result, dict) else json.loads(result or "{}")


def train(client: MONAILabelClient, model: str, epochs: int, timeout: float) -> dict:
    """Train ``model`` for ``epochs`` epochs through ``/train/`` on the datastore's final labels, on the server's
    default device, without validation; the final task status (``SystemExit`` unless DONE)."""
    client.train_start(model, {"max_epochs": epochs, "val_split": 0, "multi_gpu": False})
    deadline = time.monotonic() + timeout
    while (status := client.train_status()).get("status") in TRAIN_PENDING:
        if time.monotonic() > deadline:
            client.train_stop()
            sys.exit(f"training did not end within {timeout:.0f} s")
        time.sleep(TRAIN_POLL_SECONDS)
    if status.get("status") != "DONE":
        sys.exit(f"training ended with {status.get('status')}: {json.dumps(status)[-2000:]}")
    return status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--image", required=True, help="id of a study image in the server's datastore")
    parser.add_argument("--output", required=True, help="where to write the returned label volume")
    parser.add_argument("--train_epochs", type=int, default=0)
    parser.add_argument("--train_timeout", type=float, default=900)
    args = parser.parse_args()

    client = MONAILabelClient(args.url)
    report = {"labels": served_labels(client, args.model), "infer": infer(client, args.model, args.image, args.output)}
    if args.train_epochs:
        client.save_label(args.image, args.output, tag="final")
        report["train"] = train(client, args.model, args.train_epochs, args.train_timeout)
    print(json.dumps(report, default=str))


if __name__ == "__main__":
    main()
