"""scikit-learn 8x8 digits experiment configs."""
