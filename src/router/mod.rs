// router
