"""Networks: generators and critics, independent of how they are trained."""
