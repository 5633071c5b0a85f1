"""Text out: prompts in the model's format, decoding, and loading a trained model to answer them."""
