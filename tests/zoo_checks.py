"""MONAI's bundle checks as the model zoo runs them (``ci/verify_bundle.py`` in full mode, the zoo's unit tests), on
one bundle folder with weights, in a process whose ``common`` is the folder's (an unpacked artifact's vendored
copy)::

    python tests/zoo_checks.py <bundle folder> [--trace]

1. ``verify_metadata`` against the schema at ``eval/schema.json`` (the zoo downloads it there; put it there first
   where there is no internet);
2. ``create_workflow(...).check_properties()`` of ``train.json`` and ``inference.json``, outputs under ``eval/``;
3. ``verify_net_in_out`` of ``network_def`` at the metadata's input shape;
4. ``ckpt_export`` of ``models/model.pt`` (its weights under ``"model"``): scripted, or traced at that shape with
   ``--trace``; the exported module gives ``network_def``'s output.

Every call passes ``bundle_root``, as the zoo does. Prints one JSON line (the ``common`` package imported, the
properties each workflow lacks, the shapes checked); an exception ends the process with a traceback.
"""

import json
import sys
from pathlib import Path


def main(bundle: Path, trace: bool) -> dict:
    import torch
    from monai.bundle import ConfigParser, ckpt_export, create_workflow, verify_metadata, verify_net_in_out

    import common

    configs, models = bundle / "configs", bundle / "models"
    files = {"meta_file": str(configs / "metadata.json"), "bundle_root": str(bundle)}
    verify_metadata(meta_file=files["meta_file"], filepath=str(bundle / "eval" / "schema.json"))

    lacking = {}
    for workflow_type in ("train", "inference"):
        workflow = create_workflow(config_file=str(configs / f"{workflow_type}.json"), workflow_type=workflow_type,
                                   logging_file=str(configs / "logging.conf"), ckpt_dir=str(bundle / "eval" / "ckpt"),
                                   output_dir=str(bundle / "eval" / workflow_type), **files)
        lacking[workflow_type] = workflow.check_properties()

    inference = {**files, "config_file": str(configs / "inference.json")}
    verify_net_in_out(net_id="network_def", device="cpu", **inference)

    metadata = json.loads((configs / "metadata.json").read_text())
    image = metadata["network_data_format"]["inputs"]["image"]
    shape = [1, image["num_channels"], *image["spatial_shape"]]
    ckpt_export(net_id="network_def", filepath=str(models / "verify_model.ts"), ckpt_file=str(models / "model.pt"),
                key_in_ckpt="model", use_trace=trace, input_shape=shape, **inference)

    parser = ConfigParser()
    parser.read_meta(files["meta_file"])
    parser.read_config(inference["config_file"])
    parser["bundle_root"] = files["bundle_root"]
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(models / "model.pt", weights_only=True)["model"])
    sample = torch.rand(shape)
    with torch.no_grad():
        exported, expected = torch.jit.load(str(models / "verify_model.ts"))(sample), network.eval()(sample)
    torch.testing.assert_close(exported, expected)
    return {"common": str(Path(common.__file__).parent), "lacking": lacking, "input": shape,
            "output": list(expected.shape)}


def use_code_of(bundle: Path) -> None:
    """Import ``common`` from ``bundle`` first, as the zoo's ``verify_bundle.py`` puts the bundle on ``sys.path``,
    and forget a ``common`` imported before (a forked test runner preloads the repository's)."""
    sys.path.insert(0, str(bundle))
    for name in [name for name in sys.modules if name == "common" or name.startswith("common.")]:
        del sys.modules[name]


if __name__ == "__main__":
    folder = Path(sys.argv[1]).resolve()
    use_code_of(folder)
    print(json.dumps(main(folder, trace="--trace" in sys.argv[2:])))
