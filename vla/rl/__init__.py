"""Online RL fine-tuning of the flow policies (pi_RL: Flow-Noise and Flow-SDE with PPO / GRPO).

`objectives` holds the pure math (transition Gaussians of the denoising MDP, chain
log-likelihoods, GAE, the PPO and GRPO objectives); the rollout and learner build on it.
"""
