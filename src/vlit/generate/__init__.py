"""Instruction-response generation: modes, prompts, in-context examples, parsing, adaptation."""
