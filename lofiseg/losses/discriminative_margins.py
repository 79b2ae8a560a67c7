"""The discriminative loss's margins (De Brabandere et al. Eq. 1-2: the pull margin delta_v and the push margin
delta_d), stdlib only: the region settings take delta_d as their mean-shift bandwidth without importing torch.
"""

DELTA_V = 0.5
DELTA_D = 1.5
