// Architectures for tests: fully connected chains by their widths, and a
// small convolutional network, without going through a JobSpec.
#ifndef PNN_TESTS_ARCHITECTURES_H_
#define PNN_TESTS_ARCHITECTURES_H_

#include <vector>

#include "common/layers.h"

namespace pnn {

// Linear layers first_layer.. with boundary widths `widths` (input,
// hidden..., output); a segment after a cut starts with the activation.
inline Architecture Mlp(
    const std::vector<int>& widths, int first_layer = 1,
    pnn::v1::Activation activation = pnn::v1::ACTIVATION_RELU) {
  Architecture architecture;
  architecture.first_layer = first_layer;
  architecture.input_shape = {widths.front()};
  architecture.leading_activation = first_layer > 1;
  architecture.activation = activation;
  for (size_t i = 1; i < widths.size(); ++i) {
    architecture.layers.emplace_back().mutable_linear()->set_out_features(
        widths[i]);
  }
  return architecture;
}

// conv 4 k3 p1, max_pool 2, conv 6 k3, avg_pool 2 s1, dropout 0.25,
// flatten, linear 12, linear `classes` on [channels, 8, 8] images: every
// kind of layer, and every kind of cut (after a convolution, a pooling
// layer, a dropout, a flatten, a linear layer).
inline std::vector<pnn::v1::LayerSpec> SmallCnnLayers(int classes = 3) {
  std::vector<pnn::v1::LayerSpec> layers(8);
  auto* conv1 = layers[0].mutable_conv2d();
  conv1->set_out_channels(4);
  conv1->set_kernel(3);
  conv1->set_stride(1);
  conv1->set_padding(1);
  layers[1].mutable_max_pool()->set_kernel(2);
  layers[1].mutable_max_pool()->set_stride(2);
  auto* conv2 = layers[2].mutable_conv2d();
  conv2->set_out_channels(6);
  conv2->set_kernel(3);
  conv2->set_stride(1);
  layers[3].mutable_avg_pool()->set_kernel(2);
  layers[3].mutable_avg_pool()->set_stride(1);
  layers[4].mutable_dropout()->set_p(0.25f);
  layers[5].mutable_flatten();
  layers[6].mutable_linear()->set_out_features(12);
  layers[7].mutable_linear()->set_out_features(classes);
  return layers;
}

inline Architecture SmallCnn(int channels = 2, int classes = 3) {
  Architecture architecture;
  architecture.input_shape = {channels, 8, 8};
  architecture.layers = SmallCnnLayers(classes);
  return architecture;
}

}  // namespace pnn

#endif  // PNN_TESTS_ARCHITECTURES_H_
