"""PoD beyond the policy: layer groups calibrated from attention (`calibrate`), the post-training
adaptation to shared distant keys (`adapt`, with the training attention in `attention`), and the
geometry a checkpoint was adapted for (`geometry`)."""
