// Renders a conversation with the model's chat template (its shipped Jinja template, or a named
// fallback when it ships none) for generate --chat and chat.
#pragma once
#include <string>
#include <vector>

#include "tokenizer/chat_template.h"
#include "tools/cli_model.h"

namespace nb::tools {

struct RenderedChat {
  std::string text;
  bool has_bos = false;  // the template already wrote the BOS token's text; do not add another
};

Result<RenderedChat> render_chat(const CliModel& model, const std::vector<ChatMessage>& messages,
                                 bool add_generation_prompt);

}  // namespace nb::tools
