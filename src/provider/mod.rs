// provider
