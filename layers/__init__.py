"""Caffe Python layers of MTDnet (loaded by Caffe as layers.<module>)."""
