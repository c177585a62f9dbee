"""``napari-unet export NAME OUT``: a model as a BioImage.IO package (``OUT.zip``) or a copy (``OUT.pt``).

A ``.zip`` destination (or any name without ``.pt``) gets a BioImage.IO model package (format
0.5; see :mod:`napari_unet.core.zoo_export`), which ilastik, deepImageJ, QuPath, Fiji and the
BioImage.IO tools run; a ``.pt`` destination gets a copy of the napari-unet model file.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a model as a BioImage.IO package (.zip) or a napari-unet file (.pt)",
        description="Write a model as a BioImage.IO model package (OUT.zip: weights as pytorch_state_dict, "
                    "torchscript and onnx, test tensors, cover, documentation) or copy its napari-unet file (OUT.pt).",
    )
    p.add_argument("model", metavar="NAME|PATH", help="model name (see 'napari-unet models'), a .pt file or a BioImage.IO package")
    p.add_argument("out", metavar="OUT", help="the file to write: .zip for BioImage.IO (default), .pt for a copy")
    p.add_argument("--author", action="append", default=None, metavar="NAME",
                   help="author of the package (repeat for several; default: those of the package the model came "
                        "from, else napari-unet developers for built-in models, 'napari-unet user' for yours)")
    p.add_argument("--license", default=None, metavar="SPDX",
                   help="licence of the package, an SPDX id (default: that of the package the model came from, "
                        "else BSD-3-Clause)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT when it exists")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from . import CLIError, terminate_as_interrupt

    out = Path(args.out).expanduser()
    if str(args.out).endswith(("/", os.sep)):  # "newdir/": a folder to make, not newdir.zip
        if out.exists() and not out.is_dir():
            raise CLIError(f"{args.out}: {out} is a file, not a folder")
        out.mkdir(parents=True, exist_ok=True)
    if out.is_dir():  # a folder: the package goes inside it, named after the model
        from napari_unet.core.catalog import resolve_model_path
        from napari_unet.core.zoo_import import package_location

        # the model's whole name: "cells v1.2" is not "cells v1" (Path.stem would cut it there)
        source = package_location(resolve_model_path(args.model))
        out = out / f"{source.stem if source.suffix.lower() in ('.pt', '.zip') else source.name}.zip"
    target = out if out.suffix.lower() in (".pt", ".zip") else out.with_name(out.name + ".zip")
    from napari_unet.core.catalog import in_user_models

    if target.suffix.lower() == ".zip" and in_user_models(target):  # (a package there was listed nowhere)
        import sys

        out = target = target.with_suffix(".pt")
        print(f"napari-unet: the model folder holds napari-unet model files: written as {target.name}, listed by "
              "'napari-unet models' and in napari", file=sys.stderr)
    if target.exists() and not args.overwrite:
        raise CLIError(f"{target} exists; choose another name or pass --overwrite")
    with terminate_as_interrupt():  # (a kill left the half-built package in the temporary folder)
        if out.suffix.lower() == ".pt":
            from napari_unet.core.catalog import export_model

            written = export_model(args.model, out)
        else:
            from napari_unet.core.zoo_export import export_bioimageio

            written = export_bioimageio(args.model, out, authors=args.author, license=args.license)
    print(written)
    return 0
