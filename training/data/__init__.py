"""Datasets for training: Fashion-MNIST (IDX), scikit-learn digits, ImageFolder trees, CIFAR-10."""
