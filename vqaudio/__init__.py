"""vqaudio: a VQ-VAE audio tokenizer and WaveNet vocoder (van den Oord et al., NeurIPS 2017)."""

__version__ = "0.1.0"
