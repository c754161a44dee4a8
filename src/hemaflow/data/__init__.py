"""Reading raw images and datasets of different layouts."""
