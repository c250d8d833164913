// _qwen35: vision projector (mmproj), images and image embeddings.
#include <pybind11/stl.h>

#include <string>
#include <utility>

#include "common.h"

namespace qwen35py {

namespace {

template <typename Fn>
void call_nogil(Fn fn) {
  qwen35_status st;
  std::string msg;
  {
    py::gil_scoped_release nogil;
    st = fn();
    if (st != QWEN35_OK) msg = qwen35_errmsg();
  }
  if (st != QWEN35_OK) raise_status(st, msg);
}

MmprojPtr load_mmproj(const std::string& path, const py::object& model, int n_threads, bool use_mmap,
                      bool llamacpp_compat, int device, int preprocess, int pos_interp, int merger_gelu,
                      int image_min_tokens, int image_max_tokens, bool reference) {
  auto h = std::make_shared<MmprojHandle>();
  const qwen35_model* mdl = nullptr;
  if (!model.is_none()) {
    ModelPtr mp = model.cast<ModelPtr>();
    mdl = mp->get();
    h->model = std::make_unique<ModelUse>(mp);
  }
  qwen35_mmproj_params p = qwen35_mmproj_default_params();
  if (n_threads > 0) p.n_threads = n_threads;
  p.use_mmap = use_mmap;
  p.llamacpp_compat = llamacpp_compat;
  p.device = qwen35_device(device);
  // Checked here: an int outside an enum's values must not be cast to it.
  for (const auto& [name, v] : {std::pair<const char*, int>{"preprocess", preprocess}, {"pos_interp", pos_interp},
                                {"merger_gelu", merger_gelu}})
    if (v < 0 || v > 2) raise_status(QWEN35_ERR_INVALID_ARG, std::string("bad ") + name + " " + std::to_string(v));
  p.preprocess = qwen35_vision_preprocess(preprocess);
  p.pos_interp = qwen35_vision_pos_interp(pos_interp);
  p.merger_gelu = qwen35_vision_gelu(merger_gelu);
  p.image_min_tokens = image_min_tokens;
  p.image_max_tokens = image_max_tokens;
  p.reference = reference;
  call_nogil([&] { return qwen35_mmproj_load(path.c_str(), mdl, &p, &h->mmproj); });
  return h;
}

ImagePtr image_checked(const ImagePtr& im) {
  if (!im->image) raise_state("the image is empty");
  return im;
}

}  // namespace

void bind_vision(py::module_& m) {
  py::class_<MmprojHandle, MmprojPtr>(m, "Mmproj", "Vision projector GGUF (qwen35_mmproj).")
      .def(py::init(&load_mmproj), py::arg("path"), py::arg("model") = py::none(), py::arg("n_threads") = 0,
           py::arg("use_mmap") = true, py::arg("llamacpp_compat") = false, py::arg("device") = int(QWEN35_DEVICE_AUTO),
           py::arg("preprocess") = int(QWEN35_VISION_PREPROCESS_PRESET),
           py::arg("pos_interp") = int(QWEN35_VISION_POS_INTERP_PRESET),
           py::arg("merger_gelu") = int(QWEN35_VISION_GELU_PRESET), py::arg("image_min_tokens") = 0,
           py::arg("image_max_tokens") = 0, py::arg("reference") = false,
           "Load a projector; with a model, check that it fits it. llamacpp_compat picks the LC (True) or REF\n"
           "(False) preset; the VISION_* switches (0 = as the preset says) and the token bounds (0 = the\n"
           "preprocessing profile's default) override single items (qwen35_mmproj_params).")
      .def_property_readonly(
          "device", [](const MmprojHandle& h) { return int(qwen35_mmproj_device(h.mmproj)); },
          "Where images are encoded: DEVICE_CUDA or DEVICE_CPU (which one AUTO picked).")
      .def("close",
           [](MmprojHandle& h) {
             qwen35_mmproj_free(h.mmproj);
             h.mmproj = nullptr;
             h.model.reset();
           })
      .def("encode",
           [](const MmprojPtr& h, const ImagePtr& im) {
             qwen35_mmproj* mp = h->get();
             image_checked(im);
             auto e = std::make_shared<EmbedHandle>();
             call_nogil([&] { return qwen35_image_encode(mp, im->image, &e->embed); });
             return e;
           },
           py::arg("image"), "Encode an image into LLM-space embeddings (an ImageEmbed).");

  py::class_<ImageHandle, ImagePtr>(m, "Image", "Decoded RGB8 image (qwen35_image).")
      .def_static("from_file",
                  [](const std::string& path) {
                    auto h = std::make_shared<ImageHandle>();
                    call_nogil([&] { return qwen35_image_load_file(path.c_str(), &h->image); });
                    return h;
                  },
                  py::arg("path"), "PNG, JPEG, BMP or PPM/PGM file.")
      .def_static("from_memory",
                  [](const py::bytes& data) {
                    std::string buf = data;
                    auto h = std::make_shared<ImageHandle>();
                    call_nogil([&] { return qwen35_image_load_memory(buf.data(), buf.size(), &h->image); });
                    return h;
                  },
                  py::arg("data"), "An encoded image file held in memory.")
      .def_static("from_pixels",
                  [](const py::bytes& pixels, int32_t width, int32_t height, int32_t channels, int32_t stride) {
                    std::string buf = pixels;
                    const int64_t row = stride > 0 ? stride : int64_t(width) * channels;
                    const int64_t needed = row * (height - 1) + int64_t(width) * channels;
                    if (width <= 0 || height <= 0 || row <= 0 || int64_t(buf.size()) < needed)
                      raise_status(QWEN35_ERR_INVALID_ARG, "pixel buffer is smaller than width x height x channels");
                    auto h = std::make_shared<ImageHandle>();
                    call_nogil([&] {
                      return qwen35_image_from_pixels(reinterpret_cast<const uint8_t*>(buf.data()), width, height,
                                                      channels, stride, &h->image);
                    });
                    return h;
                  },
                  py::arg("pixels"), py::arg("width"), py::arg("height"), py::arg("channels") = 3,
                  py::arg("stride") = 0, "Raw RGB (3) or RGBA (4) pixels, rows `stride` bytes apart (0 = packed).")
      .def_property_readonly("width", [](const ImagePtr& h) { return qwen35_image_width(image_checked(h)->image); })
      .def_property_readonly("height", [](const ImagePtr& h) { return qwen35_image_height(image_checked(h)->image); });

  py::class_<EmbedHandle, EmbedPtr>(m, "ImageEmbed", "Encoded image (qwen35_image_embed), reusable across turns.")
      .def_property_readonly("n_tokens", [](const EmbedHandle& e) { return qwen35_image_embed_n_tokens(e.embed); })
      .def_property_readonly("n_embd", [](const EmbedHandle& e) { return qwen35_image_embed_n_embd(e.embed); })
      .def_property_readonly("grid",
                             [](const EmbedHandle& e) {
                               int32_t nx = 0, ny = 0, w = 0, h = 0;
                               qwen35_image_embed_grid(e.embed, &nx, &ny, &w, &h);
                               return py::make_tuple(nx, ny, w, h);
                             },
                             "(nx, ny, width, height): merged grid and preprocessed pixel size.")
      .def("data", [](const EmbedHandle& e) {
        const float* p = qwen35_image_embed_data(e.embed);
        size_t n = size_t(qwen35_image_embed_n_tokens(e.embed)) * size_t(qwen35_image_embed_n_embd(e.embed));
        return py::bytes(reinterpret_cast<const char*>(p), p ? n * sizeof(float) : 0);
      }, "n_tokens x n_embd float32 values (bytes), row-major.");
}

}  // namespace qwen35py
