"""Build labeled LoRA zoos: many adapters finetuned at once on one base model, labelled, written as PEFT folders."""
