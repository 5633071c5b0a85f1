"""Text in: reading datasets (files and the hub), tokenizers, packing text into blocks, and the
perturbations of inputs. Stands on core only."""
