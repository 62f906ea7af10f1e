"""Sparse autoencoders read from disk, safetensors only: the sae_lens layout and the EleutherAI sparsify layout.

* sae_lens: ``cfg.json`` + ``sae_weights.safetensors`` with ``W_enc (d_in, d_sae)``, ``b_enc``, ``W_dec (d_sae,
  d_in)``, ``b_dec`` and, for JumpReLU, ``threshold``; ``cfg["architecture"]`` (or the older
  ``activation_fn_str``) is ``standard`` / ``relu``, ``jumprelu`` or ``topk`` (``k`` in ``cfg["k"]`` or
  ``cfg["activation_fn_kwargs"]["k"]``); ``apply_b_dec_to_input`` subtracts ``b_dec`` first.
* sparsify: ``cfg.json`` + ``sae.safetensors`` with ``encoder.weight (num_latents, d_in)``, ``encoder.bias``,
  ``W_dec (num_latents, d_in)``, ``b_dec``; always TopK on ``relu(encoder(x − b_dec))`` with ``cfg["k"]``.

Encoding follows each library: pre = (x − b_dec·[subtract]) · W_enc + b_enc, then ReLU; JumpReLU keeps a latent
only where pre > threshold; TopK keeps the k largest. Decoding is f · W_dec + b_dec. Nothing is unpickled: a
``.pt``, ``.bin``, ``.pkl`` or a hub name is refused with a message that says what to pass instead.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file

from mmviz.errors import InputError

Activation = Literal["relu", "jumprelu", "topk"]
LAYOUTS: dict[str, str] = {"sae_lens": "sae_weights.safetensors", "sparsify": "sae.safetensors"}
"""Layout name → the weights file that identifies it (next to ``cfg.json``)."""

_PICKLED = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")


@dataclass(frozen=True, repr=False)
class SparseAutoencoder:
    """A sparse autoencoder over the residual stream at one depth of the language model.

    Attributes:
        W_enc: float32 ``(d_in, d_sae)``.
        b_enc: ``(d_sae,)``.
        W_dec: ``(d_sae, d_in)``: row f is latent f's decoder direction.
        b_dec: ``(d_in,)``.
        activation: ``"relu"``, ``"jumprelu"`` (with ``threshold``) or ``"topk"`` (with ``k``).
        depth: the residual stream it reads, by depth as in :attr:`mmviz.Trace.hidden_states` (0 = the embeddings,
            d = after decoder layer d − 1); None when neither the file nor the caller says.
        subtract_decoder_bias: subtract ``b_dec`` before encoding.
        labels: latent index → a human label, where the file has them (``labels.json``).
        source: the directory it was read from, and ``layout``: ``"sae_lens"`` or ``"sparsify"``.

    Example:
        >>> sae = mmviz.features.load_sae("saes/layer-2")          # doctest: +SKIP
        >>> sae.d_sae, sae.activation, sae.depth                    # doctest: +SKIP
        (4096, 'topk', 3)
    """

    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    activation: Activation = "relu"
    threshold: torch.Tensor | None = None
    k: int | None = None
    depth: int | None = None
    subtract_decoder_bias: bool = False
    labels: dict[int, str] = field(default_factory=dict)
    source: str = ""
    layout: str = ""

    def __post_init__(self) -> None:
        d_in, d_sae = self.W_enc.shape
        expected = {"b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
        if self.threshold is not None:
            expected["threshold"] = (d_sae,)
        for name, shape in expected.items():
            if tuple(getattr(self, name).shape) != shape:
                raise InputError(
                    f"SAE weights do not fit together: {name} has shape {tuple(getattr(self, name).shape)}, "
                    f"expected {shape} for W_enc {tuple(self.W_enc.shape)}"
                )
        if self.activation == "jumprelu" and self.threshold is None:
            raise InputError("a JumpReLU SAE needs its 'threshold' tensor in the weights file")
        if self.activation == "topk" and (self.k is None or not 0 < self.k <= d_sae):
            raise InputError(f"a TopK SAE needs k between 1 and {d_sae} in its cfg.json, not {self.k!r}")

    @property
    def d_in(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def d_sae(self) -> int:
        return int(self.W_enc.shape[1])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent activations ``(..., d_sae)`` of residual states ``x (..., d_in)`` (float32, on ``x``'s device).

        Example:
            >>> codes = sae.encode(torch.zeros(5, sae.d_in))        # doctest: +SKIP
        """
        weights = self._on(x.device)
        x = x.float()
        if self.subtract_decoder_bias:
            x = x - weights["b_dec"]
        pre = x @ weights["W_enc"] + weights["b_enc"]
        acts = torch.relu(pre)
        if self.activation == "jumprelu":
            acts = acts * (pre > weights["threshold"])
        elif self.activation == "topk":
            top = acts.topk(int(self.k or 1), dim=-1)  # relu then top-k equals top-k then relu (relu is monotone)
            acts = torch.zeros_like(acts).scatter_(-1, top.indices, top.values)
        return acts

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """The reconstruction ``codes · W_dec + b_dec`` (float32)."""
        weights = self._on(codes.device)
        return codes.float() @ weights["W_dec"] + weights["b_dec"]

    def _on(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The weights on ``device`` (moved once per device and kept: encoding many chunks reuses them)."""
        cache: dict[torch.device, dict[str, torch.Tensor]] = self.__dict__.setdefault("_devices", {})
        if device not in cache:
            names = ["W_enc", "b_enc", "W_dec", "b_dec"] + (["threshold"] if self.threshold is not None else [])
            cache[device] = {name: getattr(self, name).to(device=device, dtype=torch.float32) for name in names}
        return cache[device]

    def __repr__(self) -> str:
        where = "depth ?" if self.depth is None else f"depth {self.depth}"
        k = f", k={self.k}" if self.activation == "topk" else ""
        return f"<mmviz.SparseAutoencoder {self.layout} {self.d_in}→{self.d_sae} {self.activation}{k}, {where}>"


def load_sae(path: str | Path, *, depth: int | None = None) -> SparseAutoencoder:
    """Read a sparse autoencoder from a directory in the sae_lens or the sparsify layout (safetensors only).

    Args:
        path: the directory holding ``cfg.json`` and ``sae_weights.safetensors`` (sae_lens) or ``sae.safetensors``
            (sparsify); an optional ``labels.json`` (``{"17": "red things", ...}``) names latents.
        depth: the residual stream the SAE reads (0 = the embeddings, d = after decoder layer d − 1), when the file
            does not say or says it in another model's terms; otherwise read from ``hook_name`` / ``hook_layer``
            (``blocks.8.hook_resid_post`` → 9, ``blocks.8.hook_resid_pre`` → 8, ``layers.8`` → 9).

    Example:
        >>> sae = load_sae("saes/shapes-layer-2")                      # doctest: +SKIP
    """
    folder = _checked_folder(path)
    config = _read_config(folder / "cfg.json")
    layout = next((name for name, weights in LAYOUTS.items() if (folder / weights).is_file()), None)
    if layout is None:
        raise InputError(
            f"{folder} has a cfg.json but neither sae_weights.safetensors (sae_lens) nor sae.safetensors (sparsify)"
        )
    tensors = load_file(str(folder / LAYOUTS[layout]))  # safetensors: no code runs while reading
    read = _sae_lens if layout == "sae_lens" else _sparsify
    fields = read(tensors, config)
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 0):
        raise InputError(f"depth must be a residual-stream depth ≥ 0 (0 = the embeddings), not {depth!r}")
    return SparseAutoencoder(
        **fields,
        depth=depth if depth is not None else _depth_from(config, folder.name),
        labels=_labels(folder / "labels.json"),
        source=str(folder),
        layout=layout,
    )


def _checked_folder(path: str | Path) -> Path:
    if not isinstance(path, (str, Path)):
        raise InputError(f"load_sae takes the path of a directory, not {type(path).__name__}")
    folder = Path(path)
    if folder.suffix.lower() in _PICKLED:
        raise InputError(
            f"{folder.name}: mmviz does not read pickled files (they can run code when loaded); save the SAE with "
            f"safetensors in the sae_lens layout (cfg.json + sae_weights.safetensors) or the sparsify layout "
            f"(cfg.json + sae.safetensors) and pass that directory"
        )
    if not folder.exists():
        hint = " (mmviz never downloads: fetch it with huggingface_hub yourself)" if "/" in str(path) else ""
        raise InputError(f"no SAE directory at {str(path)!r}{hint}; pass a local directory holding cfg.json")
    if not folder.is_dir():
        raise InputError(f"{folder} is a file; pass the directory that holds cfg.json and the safetensors weights")
    if not (folder / "cfg.json").is_file():
        raise InputError(f"{folder} has no cfg.json; it is not an SAE in the sae_lens or sparsify layout")
    return folder


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise InputError(f"{path} must hold a JSON object, not {type(config).__name__}")
    return config


def _tensor(tensors: dict[str, torch.Tensor], name: str, layout: str) -> torch.Tensor:
    if name not in tensors:
        raise InputError(f"the {layout} weights file has no {name!r} tensor (it has {sorted(tensors)[:8]})")
    return tensors[name].float()


def _sae_lens(tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, Any]:
    architecture = str(config.get("architecture") or config.get("activation_fn_str") or "standard").lower()
    activation = {"standard": "relu", "relu": "relu", "jumprelu": "jumprelu", "topk": "topk"}.get(architecture)
    if activation is None:
        raise InputError(
            f"sae_lens architecture {architecture!r} is not supported; mmviz reads standard (ReLU), jumprelu and "
            f"topk SAEs"
        )
    normalize = config.get("normalize_activations") or "none"
    if normalize != "none":
        raise InputError(
            f"this SAE expects its inputs normalised ({normalize!r}); mmviz feeds raw residual states, so only "
            f"SAEs with normalize_activations 'none' give faithful codes"
        )
    k = config.get("k", (config.get("activation_fn_kwargs") or {}).get("k"))
    return {
        "W_enc": _tensor(tensors, "W_enc", "sae_lens"),
        "b_enc": _tensor(tensors, "b_enc", "sae_lens"),
        "W_dec": _tensor(tensors, "W_dec", "sae_lens"),
        "b_dec": _tensor(tensors, "b_dec", "sae_lens"),
        "threshold": tensors["threshold"].float() if "threshold" in tensors else None,
        "activation": activation,
        "k": None if k is None else int(k),
        "subtract_decoder_bias": bool(config.get("apply_b_dec_to_input", False)),
    }


def _sparsify(tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, Any]:
    if "W_skip" in tensors or config.get("transcode"):
        raise InputError("this sparsify file is a transcoder or has a skip connection; mmviz reads plain SAEs")
    return {
        "W_enc": _tensor(tensors, "encoder.weight", "sparsify").T.contiguous(),
        "b_enc": _tensor(tensors, "encoder.bias", "sparsify"),
        "W_dec": _tensor(tensors, "W_dec", "sparsify"),
        "b_dec": _tensor(tensors, "b_dec", "sparsify"),
        "activation": "topk",
        "k": int(config["k"]) if "k" in config else None,
        "subtract_decoder_bias": True,
    }


def _depth_from(config: dict[str, Any], folder_name: str) -> int | None:
    """The residual depth named by the file: ``hook_name`` (also under ``metadata``), else ``hook_layer`` (taken as
    resid_post), else a sparsify folder named after its hookpoint (``layers.8``)."""
    metadata = config.get("metadata") if isinstance(config.get("metadata"), dict) else {}
    hook = str(config.get("hook_name") or metadata.get("hook_name") or folder_name)
    if "hook_" in hook and not re.search(r"hook_resid_(pre|post)$", hook):
        raise InputError(
            f"this SAE reads {hook!r}; mmviz encodes the residual stream (hook_resid_pre / hook_resid_post)"
        )
    match = re.search(r"(?:blocks|layers|layer)[._](\d+)(?:\.(hook_resid_pre|hook_resid_post))?$", hook)
    if match:
        return int(match.group(1)) + (0 if match.group(2) == "hook_resid_pre" else 1)
    layer = config.get("hook_layer", metadata.get("hook_layer"))
    return int(layer) + 1 if isinstance(layer, int) and not isinstance(layer, bool) else None


def _labels(path: Path) -> dict[int, str]:
    if not path.is_file():
        return {}
    raw = _read_config(path)
    try:
        return {int(key): str(value) for key, value in raw.items()}
    except ValueError:
        raise InputError(f"{path}: keys must be latent indices ('17'), values labels") from None
