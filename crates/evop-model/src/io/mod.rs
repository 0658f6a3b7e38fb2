//! Getting models in and out: GGUF files ([`gguf`], with the embedded tokenizer rebuilt by
//! [`tokenizer`]), Hugging Face directories ([`load`]), random-weight models of published shapes
//! ([`synthetic`]), block weights laid out for the CPU GEMM ([`layout`]), and pruned models written back as Hugging Face directories ([`save`]).
//! Every loader returns a [`loaded::LoadedModel`].
pub mod gguf;
pub mod gguf_write;
pub mod layout;
pub mod load;
pub mod loaded;
pub mod save;
pub mod synthetic;
pub mod tokenizer;
