"""Benchmark readers: LFW pairs.txt, insightface .bin sets, CFP protocol folders and a generic pairs CSV."""
from tfface.evaluation.readers.cfp import read_cfp_pairs
from tfface.evaluation.readers.insightface_bin import load_bin
from tfface.evaluation.readers.lfw import read_lfw_pairs
from tfface.evaluation.readers.pairs import PairList, load_images
from tfface.evaluation.readers.pairs_csv import read_pairs_csv

__all__ = ["PairList", "load_bin", "load_images", "read_cfp_pairs", "read_lfw_pairs", "read_pairs_csv"]
