// _qwen35: chat template rendering and reply parsing.
#include "chat.h"

#include <pybind11/stl.h>

#include <cstring>

namespace qwen35py {

namespace {

// Optional string field of a message dict (missing or None -> nullptr).
const char* opt_str(ChatRequest& r, const py::dict& d, const char* key) {
  if (!d.contains(key)) return nullptr;
  py::object v = d[key];
  if (v.is_none()) return nullptr;
  if (!py::isinstance<py::str>(v))
    raise_status(QWEN35_ERR_INVALID_ARG, std::string("message field '") + key + "' must be a string or None");
  return r.keep(v.cast<std::string>());
}

py::object opt_bytes(const char* s) {
  if (!s) return py::none();
  return py::bytes(s);
}

// UTF-8 text from the library as str (invalid bytes become U+FFFD).
py::str text_of(const char* s, size_t n) {
  PyObject* o = PyUnicode_DecodeUTF8(s, Py_ssize_t(n), "replace");
  if (!o) throw py::error_already_set();
  return py::reinterpret_steal<py::str>(o);
}

py::object opt_text(const char* s) {
  if (!s) return py::none();
  return text_of(s, std::strlen(s));
}

// qwen35_reply_parser: the streaming reply parser. Used under the GIL, so
// one thread at a time as the C API requires.
class ReplyParser {
 public:
  ReplyParser(bool thinking, bool tools_offered, const py::object& tools_json, uint64_t id_seed) {
    std::string tools;
    if (!tools_json.is_none()) tools = tools_json.cast<std::string>();
    qwen35_status st =
        qwen35_reply_parser_create(thinking, tools_offered, tools_json.is_none() ? nullptr : tools.c_str(), id_seed, &p_);
    if (st != QWEN35_OK) raise_last(st);
  }
  ~ReplyParser() { qwen35_reply_parser_free(p_); }
  ReplyParser(const ReplyParser&) = delete;
  ReplyParser& operator=(const ReplyParser&) = delete;

  py::dict push(const std::string& text) {
    qwen35_reply_delta d;
    qwen35_status st = qwen35_reply_parser_push(p_, text.data(), text.size(), &d);
    if (st != QWEN35_OK) raise_last(st);
    return delta_dict(d);
  }
  py::dict finish() {
    qwen35_reply_delta d;
    qwen35_status st = qwen35_reply_parser_finish(p_, &d);
    if (st != QWEN35_OK) raise_last(st);
    return delta_dict(d);
  }
  py::dict result() const {
    qwen35_chat_reply r{};
    qwen35_status st = qwen35_reply_parser_result(p_, &r);
    if (st != QWEN35_OK) raise_last(st);
    py::dict out;
    try {
      out["reasoning_content"] = opt_text(r.reasoning_content);
      out["content"] = opt_text(r.content ? r.content : "");
      out["tool_calls_json"] = opt_text(r.tool_calls_json);
      out["n_tool_calls"] = r.n_tool_calls;
    } catch (...) {
      qwen35_chat_reply_free(&r);
      throw;
    }
    qwen35_chat_reply_free(&r);
    return out;
  }

 private:
  static py::dict delta_dict(const qwen35_reply_delta& d) {
    py::dict out;
    out["reasoning_content"] = text_of(d.reasoning_content, d.reasoning_content_len);
    out["content"] = text_of(d.content, d.content_len);
    py::list calls;
    for (size_t i = 0; i < d.n_tool_calls; ++i) {
      const qwen35_tool_call_delta& c = d.tool_calls[i];
      calls.append(py::make_tuple(c.index, opt_text(c.id), opt_text(c.name), text_of(c.arguments, c.arguments_len)));
    }
    out["tool_calls"] = calls;
    return out;
  }

  qwen35_reply_parser* p_ = nullptr;
};

}  // namespace

std::unique_ptr<ChatRequest> build_chat_request(const py::list& messages, const py::object& tools_json,
                                                bool add_generation_prompt, int enable_thinking,
                                                const py::object& template_override) {
  auto r = std::make_unique<ChatRequest>();
  r->params = qwen35_chat_default_params();
  r->params.add_generation_prompt = add_generation_prompt;
  r->params.enable_thinking = enable_thinking;
  if (!tools_json.is_none()) r->params.tools_json = r->keep(tools_json.cast<std::string>());
  if (!template_override.is_none()) r->params.template_override = r->keep(template_override.cast<std::string>());

  r->messages.resize(messages.size());
  r->parts.resize(messages.size());
  for (size_t i = 0; i < messages.size(); ++i) {
    if (!py::isinstance<py::dict>(messages[i]))
      raise_status(QWEN35_ERR_INVALID_ARG, "message " + std::to_string(i) + " is not a dict");
    py::dict d = messages[i].cast<py::dict>();
    qwen35_chat_message& msg = r->messages[i];
    msg = qwen35_chat_message{};
    msg.role = opt_str(*r, d, "role");
    if (!msg.role) raise_status(QWEN35_ERR_INVALID_ARG, "message " + std::to_string(i) + " has no role");
    msg.content = opt_str(*r, d, "content");
    msg.reasoning_content = opt_str(*r, d, "reasoning_content");
    msg.tool_calls_json = opt_str(*r, d, "tool_calls_json");
    msg.name = opt_str(*r, d, "name");
    if (d.contains("parts") && !d["parts"].is_none()) {
      for (py::handle item : d["parts"].cast<py::list>()) {
        py::tuple t = item.cast<py::tuple>();
        const std::string kind = t[0].cast<std::string>();
        qwen35_content_part part{};
        if (kind == "text") {
          part.type = QWEN35_PART_TEXT;
          part.text = r->keep(t[1].cast<std::string>());
        } else if (kind == "image") {
          part.type = QWEN35_PART_IMAGE;
          if (!t[1].is_none()) {
            EmbedPtr e = t[1].cast<EmbedPtr>();
            part.image = e->embed;
            r->embeds.push_back(std::move(e));
          }
        } else {
          raise_status(QWEN35_ERR_INVALID_ARG, "unknown content part type '" + kind + "'");
        }
        r->parts[i].push_back(part);
      }
    }
  }
  // Every vector is complete: point the messages at their parts.
  for (size_t i = 0; i < r->messages.size(); ++i) {
    r->messages[i].parts = r->parts[i].empty() ? nullptr : r->parts[i].data();
    r->messages[i].n_parts = r->parts[i].size();
  }
  return r;
}

void bind_chat(py::module_& m) {
  m.def(
      "chat_render",
      [](const ModelPtr& model, const py::list& messages, const py::object& tools_json, bool add_generation_prompt,
         int enable_thinking, const py::object& template_override) {
        auto req = build_chat_request(messages, tools_json, add_generation_prompt, enable_thinking, template_override);
        const qwen35_model* mdl = model->get();
        std::string buf(4096, '\0');
        int32_t n;
        std::string err;
        {
          py::gil_scoped_release nogil;
          size_t needed = 0;
          n = qwen35_chat_render(mdl, req->messages.data(), req->messages.size(), &req->params, buf.data(),
                                 buf.size(), &needed);
          if (n == QWEN35_ERR_BUFFER_TOO_SMALL) {
            buf.assign(needed + 1, '\0');
            n = qwen35_chat_render(mdl, req->messages.data(), req->messages.size(), &req->params, buf.data(),
                                   buf.size(), &needed);
          }
          if (n < 0) err = qwen35_errmsg();
        }
        if (n < 0) raise_status(qwen35_status(n), err);
        return py::bytes(buf.data(), size_t(n));
      },
      py::arg("model"), py::arg("messages"), py::arg("tools_json") = py::none(),
      py::arg("add_generation_prompt") = true, py::arg("enable_thinking") = -1,
      py::arg("template_override") = py::none(), "Render a conversation with the model's chat template (bytes).");

  m.def(
      "chat_parse",
      [](const py::bytes& text, bool thinking, bool tools_offered) {
        std::string s = text;
        qwen35_chat_reply reply{};
        qwen35_status st = qwen35_chat_parse(s.data(), s.size(), thinking, tools_offered, &reply);
        if (st != QWEN35_OK) raise_last(st);
        py::dict d;
        d["reasoning_content"] = opt_bytes(reply.reasoning_content);
        d["content"] = py::bytes(reply.content ? reply.content : "");
        d["tool_calls_json"] = opt_bytes(reply.tool_calls_json);
        d["n_tool_calls"] = reply.n_tool_calls;
        qwen35_chat_reply_free(&reply);
        return d;
      },
      py::arg("text"), py::arg("thinking"), py::arg("tools_offered"),
      "Split generated text into reasoning_content, content and tool calls (values are bytes).");

  py::class_<ReplyParser>(m, "ReplyParser",
                          "Streaming reply parser (qwen35_reply_parser): push(text) and finish() return what they "
                          "added as {'reasoning_content': str, 'content': str, 'tool_calls': [(index, id or None, "
                          "name or None, arguments str)]}; id and name are set when a call is announced.")
      .def(py::init<bool, bool, const py::object&, uint64_t>(), py::arg("thinking"), py::arg("tools_offered"),
           py::arg("tools_json") = py::none(), py::arg("id_seed") = 0)
      .def("push", &ReplyParser::push, py::arg("text"), "Feed generated text (str or UTF-8 bytes).")
      .def("finish", &ReplyParser::finish, "End of the text: what was still held back.")
      .def("result", &ReplyParser::result,
           "The reply so far as chat_parse gives it, with str values (only complete tool calls before finish).");
}

}  // namespace qwen35py
