"""A typed, read-only view of the weights manifest (``repzoo/weights/weights_manifest.json``).

The manifest is data: every released checkpoint of every model, with its evaluation config,
and the RepOptimizer scale files. The catalog reads the tags, the pretrained loader the
records, the scales loader the scale files, the CLI all of it::

    from repzoo.weights.manifest import load_manifest
    rec = load_manifest().weights("RepVGG-A0")          # the default (first) tag
    rec.files[0].file_name, rec.top1, rec.eval.crop_pct

The file is read once per process (:func:`load_manifest` is cached). Its layout is
documented by ``docs/weights_manifest.schema.json``.
"""
from __future__ import annotations

import functools
import json
import pathlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..errors import RepZooError, WeightsUnavailableError
from ..registry import model_names, normalize_name

__all__ = [
    "MANIFEST_PATH",
    "Source",
    "ManualLink",
    "EvalConfig",
    "DEFAULT_EVAL",
    "Packaged",
    "FileRecord",
    "WeightsRecord",
    "ModelRecord",
    "Manifest",
    "load_manifest",
]

#: The weights manifest: the one copy, shipped in the package.
MANIFEST_PATH = pathlib.Path(__file__).with_name("weights_manifest.json")


@dataclass(frozen=True)
class Source:
    """One place a file can be downloaded from.

    Attributes:
        kind: ``"hf"`` (Hugging Face Hub), ``"url"`` (HTTP(S)) or ``"gdrive"`` (Google Drive).
        location: ``"owner/repo"`` for hf, the full URL for url, the file id for gdrive.
        filename: hf only: the path of the file in the repository.
        revision: hf only: branch, tag or commit (default ``main``).
    """

    kind: str
    location: str
    filename: Optional[str] = None
    revision: Optional[str] = None

    def __post_init__(self) -> None:
        if self.kind not in ("hf", "url", "gdrive"):
            raise RepZooError(f"Unknown source kind {self.kind!r}: use 'hf', 'url' or 'gdrive'.")
        if self.kind == "hf" and not self.filename:
            raise RepZooError(f"Hugging Face source {self.location!r} needs filename= (the file's path in the repo).")

    def describe(self) -> str:
        """A one-line human description (used in error messages)."""
        if self.kind == "hf":
            rev = f"@{self.revision}" if self.revision else ""
            return f"Hugging Face Hub {self.location}{rev} / {self.filename}"
        if self.kind == "gdrive":
            return f"Google Drive file {self.location}"
        return self.location

    def manual_link(self) -> str:
        """Where a person can download the file with a web browser."""
        if self.kind == "hf":
            return f"https://huggingface.co/{self.location}/resolve/{self.revision or 'main'}/{self.filename}"
        if self.kind == "gdrive":
            return f"https://drive.google.com/file/d/{self.location}"
        return self.location


@dataclass(frozen=True)
class ManualLink:
    """Where a person can download a file by hand (a Drive folder, a Baidu share and its code)."""

    site: str
    url: str
    access_code: Optional[str] = None

    def __str__(self) -> str:
        code = f" (access code {self.access_code})" if self.access_code else ""
        return f"{self.site}: {self.url}{code}"


@dataclass(frozen=True)
class EvalConfig:
    """The authors' evaluation transform, in timm's ``pretrained_cfg`` terms."""

    input_size: Tuple[int, int, int]
    crop_pct: float
    interpolation: str
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    source: Optional[str] = None
    crop_mode: str = "center"

    def as_pretrained_cfg(self) -> Dict[str, Any]:
        return dict(input_size=self.input_size, crop_pct=self.crop_pct, interpolation=self.interpolation,
                    mean=self.mean, std=self.std, crop_mode=self.crop_mode)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: The evaluation config of a model without released weights: ImageNet's, at 224 (timm's default).
DEFAULT_EVAL = EvalConfig((3, 224, 224), 0.875, "bilinear", IMAGENET_MEAN, IMAGENET_STD)


@dataclass(frozen=True)
class Packaged:
    """A copy of a released file that ships inside the package (``repzoo/weights/data/<file>``),
    converted to safetensors; ``sha256`` is the packaged file's own hash."""

    file: str
    sha256: str


@dataclass(frozen=True)
class FileRecord:
    """One file: its name in the cache / mirror, what is known of it, and where it comes from.

    ``form`` and ``key_style`` are None for scale files.
    """

    file_name: str
    size: Optional[int]
    sha256: Optional[str]
    sources: Tuple[Source, ...]
    form: Optional[str] = None
    key_style: Optional[str] = None
    manual: Tuple[ManualLink, ...] = ()
    note: Optional[str] = None
    packaged: Optional["Packaged"] = None

    def hint(self) -> Optional[str]:
        """Text for humans on getting the file by hand (for error messages), beyond the sources' own links."""
        known = {src.manual_link() for src in self.sources}
        lines = [f"  {link}" for link in self.manual if link.url not in known]
        if not lines:
            return f"Save it as {self.file_name}."
        return "Also by hand from:\n" + "\n".join(lines) + f"\nand save it as {self.file_name}."


@dataclass(frozen=True)
class WeightsRecord:
    """One pretrained tag of one model: the files holding the weights (tried in order) and their metadata."""

    name: str
    tag: str
    files: Tuple[FileRecord, ...]
    top1: Optional[float]
    eval: EvalConfig
    license: Optional[str]
    paper: str
    family: str
    dataset: Optional[str] = None
    note: Optional[str] = None

    def pretrained_cfg(self) -> Dict[str, Any]:
        """What ``model.pretrained_cfg`` gets after these weights are loaded."""
        return dict(self.eval.as_pretrained_cfg(), tag=self.tag, top1=self.top1, license=self.license,
                    paper=self.paper)


@dataclass(frozen=True)
class ModelRecord:
    name: str
    family: str
    paper: str
    license: Optional[str]
    code: Optional[str]
    weights: Tuple[WeightsRecord, ...] = field(repr=False)


_norm = normalize_name


def _parse_eval(d: Mapping[str, Any]) -> EvalConfig:
    return EvalConfig(tuple(d["input_size"]), float(d["crop_pct"]), d["interpolation"], tuple(d["mean"]),
                      tuple(d["std"]), d.get("source"), d.get("crop_mode", "center"))


def _parse_file(d: Mapping[str, Any]) -> FileRecord:
    return FileRecord(
        file_name=d["file_name"],
        size=d.get("size"),
        sha256=d.get("sha256"),
        sources=tuple(Source(s["kind"], s["location"], s.get("filename"), s.get("revision"))
                      for s in d.get("sources", ())),
        form=d.get("form"),
        key_style=d.get("key_style"),
        manual=tuple(ManualLink(m["site"], m["url"], m.get("access_code")) for m in d.get("manual", ())),
        note=d.get("note"),
        packaged=Packaged(d["packaged"]["file"], d["packaged"]["sha256"]) if d.get("packaged") else None,
    )


class Manifest:
    """Models → tags → files, and RepOpt scale files. Lookups accept any spelling of a name."""

    def __init__(self, data: Mapping[str, Any]):
        self.version = data.get("manifest_version")
        self._models: Dict[str, ModelRecord] = {}
        self._lookup: Dict[str, str] = {}
        for name, m in data.get("models", {}).items():
            tags = tuple(
                WeightsRecord(
                    name=name,
                    tag=t["tag"],
                    files=tuple(_parse_file(f) for f in t["files"]),
                    top1=t.get("top1"),
                    eval=_parse_eval(t["eval"]),
                    license=m.get("license"),
                    paper=m["paper"],
                    family=m["family"],
                    dataset=t.get("dataset"),
                    note=t.get("note"),
                )
                for t in m["weights"]
            )
            self._models[name] = ModelRecord(name, m["family"], m["paper"], m.get("license"), m.get("code"), tags)
            self._lookup[_norm(name)] = name
        self._scales: Dict[str, FileRecord] = {
            name: _parse_file(d) for name, d in data.get("scales", {}).items()
        }
        self._scale_lookup = {_norm(name): name for name in self._scales}
        self._family_eval: Dict[str, EvalConfig] = {
            family: _parse_eval(d["eval"]) for family, d in data.get("families", {}).items()}

    @classmethod
    def from_file(cls, path: "pathlib.Path | str") -> "Manifest":
        with open(path, encoding="utf-8") as f:
            return cls(json.load(f))

    # ------------------------------------------------------------------ lookups
    def names(self) -> List[str]:
        """Every model name in the manifest."""
        return list(self._models)

    def scale_names(self) -> List[str]:
        return list(self._scales)

    def model(self, name: str) -> ModelRecord:
        canonical = self._lookup.get(_norm(name))
        if canonical is None:
            with_weights = [n for n in model_names() if _norm(n) in self._lookup]
            raise WeightsUnavailableError(
                f"No released weights are known for {name!r}: build it without pretrained weights, or load "
                f"your own checkpoint file (checkpoint_path= in Python). Models with released weights: "
                f"{', '.join(with_weights)}."
            )
        return self._models[canonical]

    def tags(self, name: str) -> List[str]:
        """The pretrained tags of ``name`` in order (the first is the default); [] if none."""
        canonical = self._lookup.get(_norm(name))
        return [w.tag for w in self._models[canonical].weights] if canonical else []

    def weights(self, name: str, tag: Optional[str] = None) -> WeightsRecord:
        """The record of ``name``'s weights under ``tag`` (default: the first tag)."""
        model = self.model(name)
        if tag is None:
            return model.weights[0]
        for rec in model.weights:
            if rec.tag == tag:
                return rec
        raise RepZooError(
            f"{model.name} has no pretrained tag {tag!r}; its tags are: "
            f"{', '.join(w.tag for w in model.weights)}."
        )

    def family_eval(self, family: str) -> EvalConfig:
        """The evaluation config of a family's models without released weights (default: ImageNet's at 224)."""
        return self._family_eval.get(family, DEFAULT_EVAL)

    def scales(self, name: str) -> FileRecord:
        """The RepOptimizer scale file of RepOpt model ``name``."""
        canonical = self._scale_lookup.get(_norm(name))
        if canonical is None:
            raise RepZooError(
                f"No released RepOptimizer scales for {name!r}; scale files exist for: "
                f"{', '.join(self._scales)}. Run Hyper-Search to make your own."
            )
        return self._scales[canonical]

    def files(self) -> List[Tuple[str, Optional[str], FileRecord]]:
        """Every file in the manifest as ``(model name, tag or None for scales, record)``."""
        out = [(m.name, w.tag, f) for m in self._models.values() for w in m.weights for f in w.files]
        out += [(name, None, f) for name, f in self._scales.items()]
        return out


@functools.lru_cache(maxsize=1)
def load_manifest() -> Manifest:
    """The packaged manifest, parsed once per process."""
    try:
        return Manifest.from_file(MANIFEST_PATH)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise RepZooError(
            f"The packaged weights manifest {MANIFEST_PATH} is missing or invalid ({type(err).__name__}: {err}). "
            "Reinstall repzoo."
        ) from err
