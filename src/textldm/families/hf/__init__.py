"""Any Hugging Face causal LM, for evaluation beside the textldm families (no training, no textldm folder)."""
from textldm.families.hf.pipeline import HFPipeline
from textldm.families.spec import Family

FAMILY = Family("hf", "a Hugging Face causal LM (a Hub name or a local folder), for evaluation", HFPipeline, (),
                saves=False, label="HF")

__all__ = ["FAMILY", "HFPipeline"]
