$user = Get-StewardAdUser -Identity ([string]$p.identity)
return (Out-StewardResult -Status 'unchanged' -Result (ConvertTo-StewardAdUser $user))
