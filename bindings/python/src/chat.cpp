// _qwen35: chat template rendering and reply parsing.
#include "chat.h"

#include <pybind11/stl.h>

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
}

}  // namespace qwen35py
