"""CIFAR-10 experiment configs."""
