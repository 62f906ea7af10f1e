"""Neurons and sparse-autoencoder features per patch and token.

* :func:`neurons` — one decoder layer's MLP neurons at every position (top k kept, every neuron exact on request);
* :func:`load_sae` — a sparse autoencoder from a directory in the sae_lens or sparsify layout (safetensors only);
* :func:`encode` — its latents at every position of a trace (top k kept), with the reconstruction error;
* :func:`clamp` — set one latent (0 = off) and see what the answer does.

Example:
    >>> sae = mmviz.features.load_sae("saes/shapes-layer-2")           # doctest: +SKIP
    >>> codes = mmviz.features.encode(trace, sae)                      # doctest: +SKIP
    >>> latent, _ = codes.top_at(trace.image_positions[12])[0]          # doctest: +SKIP
    >>> mmviz.features.clamp(trace, sae, latent, 0.0).delta             # doctest: +SKIP
"""

from mmviz.features.clamp import clamp
from mmviz.features.codes import TopActivations, UnitCard
from mmviz.features.encode import encode
from mmviz.features.neurons import neurons
from mmviz.features.sae import LAYOUTS, SparseAutoencoder, load_sae

__all__ = ["LAYOUTS", "SparseAutoencoder", "TopActivations", "UnitCard", "clamp", "encode", "load_sae", "neurons"]
