"""The CTG models: the network, the feature families and the predictors they are served as."""
