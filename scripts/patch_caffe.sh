#!/usr/bin/env bash
# Source patches applied to the unpacked Caffe tree before building.
# usage: patch_caffe.sh CAFFE_SRC_DIR
set -euo pipefail
cd "$1"
# 1. pycaffe's _caffe.so is linked with rpath $ORIGIN/../../build/lib, but this
#    Makefile builds into .temp_release/: point the rpath at the real library so
#    `import caffe` works without LD_LIBRARY_PATH.
grep -q 'rpath,$(ORIGIN)/../../build/lib' Makefile
sed -i 's#-Wl,-rpath,$(ORIGIN)/../../build/lib#-Wl,-rpath,$(ORIGIN)/../../$(BUILD_DIR)/lib#' Makefile
# 2. The shipped Makefile.config points at a conda Python; ours replaces it.
rm -f Makefile.config
# 3. The sdist ships a stale, pre-generated python/caffe/proto/caffe_pb2.py
#    (old protoc output, newer mtime than caffe.proto, so make keeps it) that
#    current protobuf runtimes reject ("duplicate file name"). Delete it so
#    the build regenerates it with the system protoc.
rm -f python/caffe/proto/caffe_pb2.py
# 4. This fork's tools/caffe.cpp dropped BVLC's CopyLayers: `caffe train
#    -weights M` was accepted and silently ignored (training started from the
#    fillers). Restore BVLC's behaviour: copy the layers of M (comma-separated
#    list) by name into the train and test nets when not resuming.
grep -q 'void CopyLayers' tools/caffe.cpp || {
  grep -q '^// Train / Finetune a model.' tools/caffe.cpp
  perl -0pi -e 's|// Train / Finetune a model\.|// Load the weights from the specified caffemodel(s) into the train and test nets.
void CopyLayers(caffe::Solver<float>* solver, const std::string& model_list) {
  std::vector<std::string> model_names;
  boost::split(model_names, model_list, boost::is_any_of(","));
  for (int i = 0; i < model_names.size(); ++i) {
    LOG(INFO) << "Finetuning from " << model_names[i];
    solver->net()->CopyTrainedLayersFrom(model_names[i]);
    for (int j = 0; j < solver->test_nets().size(); ++j) {
      solver->test_nets()[j]->CopyTrainedLayersFrom(model_names[i]);
    }
  }
}

// Train / Finetune a model.|' tools/caffe.cpp
  perl -0pi -e 's|(    solver->Restore\(FLAGS_snapshot.c_str\(\)\);\n  \})|$1 else if (FLAGS_weights.size()) {\n    CopyLayers(solver.get(), FLAGS_weights);\n  }|' tools/caffe.cpp
  grep -q 'CopyLayers(solver.get(), FLAGS_weights)' tools/caffe.cpp
}
echo "patch_caffe: ok"
