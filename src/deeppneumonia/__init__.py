"""deeppneumonia: lesion-aware, class-imbalance-robust chest X-ray classification.

Implements "Deep Pneumonia: Attention-Based Contrastive Learning for Class-Imbalanced Pneumonia Lesion
Recognition in Chest X-rays": SimCLR pre-training (Stage I), mask-guided attention with contrastive
regulation (MGACR) and the class-balanced focal loss (Stage II).
"""

__version__ = "0.1.0"
