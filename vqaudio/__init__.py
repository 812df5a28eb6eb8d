"""vqaudio: a VQ-VAE audio tokenizer and WaveNet vocoder (van den Oord et al., NeurIPS 2017).

``from vqaudio import VQVAE`` gives the model class; the import of torch is deferred until then.
"""

__version__ = "0.1.0"
__all__ = ["VQVAE", "__version__"]


def __getattr__(name: str):
    if name == "VQVAE":
        from vqaudio.model import VQVAE

        return VQVAE
    raise AttributeError(f"module 'vqaudio' has no attribute {name!r}")
