"""Tiny randomly initialised students for tests: built from a config, no download, < 1 s."""

from pathlib import Path

_CORPUS = [
    "The answer is 145. Divide the total number of bananas by the number of groups.",
    "Question: There are 87 oranges and 290 bananas. How big is each group? Answer choices: (A) 1 (B) 2",
    "Step 1: 12 + 30 = 42. Step 2: 42 * 2 = 84. So the answer is True or False, yes or no.",
    "### Instruction:\n### Response:\n<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n",
    "0 1 2 3 4 5 6 7 8 9 . , $ % ( ) + - * / = ? ! : ; a b c d e f g h i j k l m n o p q r s t u v w x y z",
]

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tiny_tokenizer(chat_template: bool = False):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    if chat_template:
        fast.eos_token = "<|im_end|>"
        fast.chat_template = CHAT_TEMPLATE
    return fast


def make_tiny_student(path: Path, chat_template: bool = False, hidden_size: int = 32, seed: int = 0) -> Path:
    """Write a 2-layer random Llama student (model + tokenizer) to `path` and return it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    tokenizer = make_tiny_tokenizer(chat_template=chat_template)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_tiny_gemma3(tokenizer, seed: int = 0):
    """A 2-layer random Gemma-3 (one sliding-window, one full-attention layer; tied, scaled embedding)."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=4,
                              layer_types=["sliding_attention", "full_attention"], tie_word_embeddings=True,
                              pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                              eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    return Gemma3ForCausalLM(config)
