"""RSNA 2024 Lumbar Spine Degenerative Classification: data, models, training and inference."""
