"""``import repzoo`` stays light: none of the heavy libraries is imported with it."""
import subprocess
import sys

HEAVY = ["timm", "torchvision", "huggingface_hub", "safetensors", "requests", "tqdm", "filelock", "onnx",
         "onnxruntime", "onnxscript", "mmengine", "mmcv", "mmdet", "mmseg"]


def test_import_repzoo_imports_no_heavy_library():
    code = (  # measured against what `import torch` alone imports (it pulls in tqdm by itself)
        "import sys, torch; base = set(sys.modules); import repzoo; repzoo.list_models(); "
        f"print([m for m in {HEAVY!r} if m in sys.modules and m not in base])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
