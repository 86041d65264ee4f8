"""Score networks in flax nnx. They map (x, t-conditioning) to an output and know nothing about SDEs."""
