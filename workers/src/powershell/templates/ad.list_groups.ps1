$user = Get-StewardAdUser -Identity ([string]$p.identity)
$groups = @($user.MemberOf | ForEach-Object { [string]$_ })
return (Out-StewardResult -Status 'unchanged' -Result ([ordered]@{ distinguished_name = [string]$user.DistinguishedName; groups = $groups }))
