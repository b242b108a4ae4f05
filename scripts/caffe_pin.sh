# The Caffe source we build: PyPI's brocolli-caffe sdist carries the official
# BVLC Caffe source (master 9b89154 plus extra SSD layers we do not use).
CAFFE_PYPI_REQ="brocolli-caffe==9.0.2"
CAFFE_SDIST_NAME="brocolli-caffe-9.0.2.tar.gz"
CAFFE_SDIST_SHA256="c6410cc60bdd6db685d441b66be7df05410f8850ac88d6b75d48ef9b2315c08a"
