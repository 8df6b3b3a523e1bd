"""An fp32-activation twin of a quantised package: the same weights file (hard-linked, not copied), every
MatMulNBits at accuracy_level 0, so its logits are the carried weights' exact fp32 arithmetic. For a
package carried exactly from a GGUF (`--quant gguf`) this is the fp32 reference of that GGUF without
writing 4x its bytes (transformers' dequantised load equals the carried blocks; tests/test_quantize.py).

    python bench/fp32_twin.py PACKAGE OUT
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

import onnx

from slm.core.package import read_manifest, write_manifest


def twin(package: Path, out: Path) -> Path:
    man = read_manifest(package)
    out.mkdir(parents=True, exist_ok=True)
    for f in package.iterdir():
        if f.suffix == ".onnx":
            model = onnx.load(str(f), load_external_data=False)
            for node in model.graph.node:
                if node.op_type == "MatMulNBits":
                    for a in node.attribute:
                        if a.name == "accuracy_level":
                            a.i = 0
            onnx.save_model(model, str(out / f.name))
        elif not (out / f.name).exists() and f.name != "manifest.json":
            os.link(f.resolve(), out / f.name)      # a hard link: ONNX Runtime refuses external data outside the folder
    quant = dataclasses.replace(man.quant, accuracy_level=0, notes=man.quant.notes + f"; fp32 twin of {package}")
    write_manifest(out, dataclasses.replace(man, quant=quant))
    read_manifest(out)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("package", type=Path)
    p.add_argument("out", type=Path)
    a = p.parse_args(argv)
    print(twin(a.package, a.out))


if __name__ == "__main__":
    main()
