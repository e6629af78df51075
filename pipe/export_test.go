package pipe

// LargeBuffersInUse reports how many large buffers Joins hold right now.
func LargeBuffersInUse() int64 { return largeInUse.Load() }
