//! The llama.cpp (GGUF) names of a Hugging Face llama or Qwen2 checkpoint's tensors, for tools
//! that write GGUF files from the same weights as a safetensors checkpoint (the tests' tiny
//! models, `gen-bench-model --gguf`).

/// `model.layers.3.self_attn.q_proj.weight` → `blk.3.attn_q.weight`; `None` for a name that
/// has no GGUF counterpart in these architectures.
pub fn gguf_tensor_name(hf: &str) -> Option<String> {
    let whole = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
    ];
    if let Some((_, g)) = whole.iter().find(|(h, _)| *h == hf) {
        return Some((*g).to_owned());
    }
    let (layer, name) = hf.strip_prefix("model.layers.")?.split_once('.')?;
    if layer.parse::<u32>().is_err() {
        return None;
    }
    let g = match name {
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}"))
}

#[cfg(test)]
mod tests {
    use super::gguf_tensor_name;

    #[test]
    fn names_map_like_llama_cpp() {
        let n = |s| gguf_tensor_name(s);
        assert_eq!(
            n("model.embed_tokens.weight").as_deref(),
            Some("token_embd.weight")
        );
        assert_eq!(n("lm_head.weight").as_deref(), Some("output.weight"));
        assert_eq!(
            n("model.layers.12.mlp.down_proj.weight").as_deref(),
            Some("blk.12.ffn_down.weight")
        );
        assert_eq!(
            n("model.layers.0.self_attn.k_proj.bias").as_deref(),
            Some("blk.0.attn_k.bias")
        );
        assert_eq!(n("model.layers.x.mlp.up_proj.weight"), None);
        assert_eq!(n("model.layers.1.rotary_emb.inv_freq"), None);
        assert_eq!(n("vision_tower.weight"), None);
    }
}
