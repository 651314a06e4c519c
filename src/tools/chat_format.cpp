#include "tools/chat_format.h"

namespace nb::tools {

Result<RenderedChat> render_chat(const CliModel& model, const std::vector<ChatMessage>& messages,
                                 bool add_generation_prompt) {
  const Tokenizer& tok = *model.tokenizer;
  const std::string bos = tok.is_valid_id(tok.bos_id()) ? tok.token_text(tok.bos_id()) : "";
  const std::string eos = tok.is_valid_id(tok.eos_id()) ? tok.token_text(tok.eos_id()) : "";
  NB_ASSIGN_OR_RETURN(ChatTemplate tmpl, ChatTemplate::for_model(model.chat_template, bos, eos));
  RenderedChat out;
  NB_ASSIGN_OR_RETURN(out.text, tmpl.render(messages, add_generation_prompt));
  out.has_bos = !bos.empty() && out.text.rfind(bos, 0) == 0;
  return out;
}

}  // namespace nb::tools
