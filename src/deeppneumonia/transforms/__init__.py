"""From cached images to network inputs: the preprocessing contract, augmentation, filters, IAM's erasing."""
