"""Recipes for the Llama-Nemotron family: Nano 8B, Super 49B, Ultra 253B on H100 nodes."""
