"""Building blocks shared by the archs: norms, MLPs, RoPE, attention and SSM mixers."""
