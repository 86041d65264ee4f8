"""Fashion-MNIST experiment configs."""
